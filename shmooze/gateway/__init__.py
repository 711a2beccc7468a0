"""The gateway: the one public entry, its fast lane, push (WebSocket, long poll, fan-out) and the
dashboard."""
