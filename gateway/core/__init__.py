"""The sans-I/O core: channels, publications, streams, sequencing, cursors, commands, sessions.

Nothing here imports the reactor, twisted.web or Autobahn; time comes in as values.
"""

from gateway.core.channels import is_valid_channel, pattern_matches, validate_channel
from gateway.core.cursor import decode_cursor, encode_cursor
from gateway.core.model import HistoryResult, Position, Publication
from gateway.core.sequencer import Sequencer
from gateway.core.stream import Stream, recover

__all__ = [
    "HistoryResult",
    "Position",
    "Publication",
    "Sequencer",
    "Stream",
    "decode_cursor",
    "encode_cursor",
    "is_valid_channel",
    "pattern_matches",
    "recover",
    "validate_channel",
]
