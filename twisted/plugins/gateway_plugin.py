from twisted.application.service import ServiceMaker

Gateway = ServiceMaker("gateway", "gateway.tap", "Real-time WebSocket, SSE and long-poll gateway.", "gateway")
