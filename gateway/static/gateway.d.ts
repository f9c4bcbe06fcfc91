// TypeScript declarations of gateway.js, the gateway's browser client (docs/protocol.md section 9).

export type Transport = "websocket" | "sse" | "poll";

/** A position: the last publication of a channel that was delivered. */
export interface Position {
  epoch: string;
  seq: number;
}

/** A publication (docs/protocol.md section 3). */
export interface MessageEvent<T = unknown> {
  type: "message";
  channel: string;
  seq: number;
  epoch: string;
  data: T;
  /** The server's acceptance time, ms since the Unix epoch. */
  ts: number;
  /** The publisher's identity (the token's `sub`), absent for anonymous and API-key publishes. */
  from?: string;
}

/** The position could not be continued: refetch the application's state. Delivery continues after (epoch, seq). */
export interface ResetEvent {
  type: "reset";
  channel: string;
  epoch: string;
  seq: number;
}

export type ChannelEvent<T = unknown> = MessageEvent<T> | ResetEvent;

export interface Ack {
  channel: string;
  seq: number;
  epoch: string;
}

export interface PresenceAnswer {
  channel: string;
  members: { sub: string; connections: number }[];
  anonymous: number;
}

export interface StateEvent {
  state: "connecting" | "connected" | "reconnecting" | "closed";
  transport: Transport;
  /** Milliseconds until the next attempt while `reconnecting`, else 0. */
  delay: number;
}

export interface ErrorEvent {
  /** The gateway's error code (e.g. "forbidden"), or "token" when the token function failed. */
  code: string;
  message: string;
  /** Set when a subscription was refused. */
  channel?: string;
}

export interface RefreshEvent {
  transport: Transport;
  /** The new token's `exp` (seconds since the epoch), or null. */
  exp: number | null;
}

export type TokenSource = string | (() => string | null | Promise<string | null>);

export interface GatewayOptions {
  /** A token, or a function called before each connection and ahead of the token's `exp`. */
  token?: TokenSource;
  /** The transports to use, in order of preference (default: all three, in this order). */
  transports?: Transport[];
}

export interface Subscription {
  unsubscribe(): void;
}

/** Rejections of `publish` and `presence`: `code` is the gateway's error code, or "timeout", "closed", "network". */
export interface GatewayError extends Error {
  name: "GatewayError";
  code: string;
}

export declare class Gateway {
  /**
   * @param url the gateway's base URL, e.g. "https://rt.example.com/" or "/realtime/" (resolved against the page).
   */
  constructor(url: string, options?: GatewayOptions);
  /** The base URL in use (absolute, ending with "/"). */
  readonly url: string;
  /** The current state. */
  readonly state: StateEvent;
  /** Every publication of `channel` once and in order, or a `reset`. */
  subscribe<T = unknown>(channel: string, callback: (event: ChannelEvent<T>) => void): Subscription;
  /** Resolves with the ack; rejects with a GatewayError (its code), or "timeout" after 30 s. */
  publish(channel: string, data: unknown): Promise<Ack>;
  /** Who is subscribed to `channel` (docs/protocol.md section 11). */
  presence(channel: string): Promise<PresenceAnswer>;
  on(event: "state", listener: (state: StateEvent) => void): () => void;
  on(event: "error", listener: (error: ErrorEvent) => void): () => void;
  on(event: "refresh", listener: (refresh: RefreshEvent) => void): () => void;
  /** Stop everything: connections, timers, requests; pending publishes reject with "closed". */
  close(): void;
  /** The transports this client knows, in the default order. */
  static readonly transports: Transport[];
  /** Makes the errors `publish` and `presence` reject with. */
  static GatewayError(code: string, message?: string): GatewayError;
}

export default Gateway;

declare global {
  interface Window {
    Gateway: typeof Gateway;
  }
}
