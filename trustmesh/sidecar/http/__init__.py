"""HTTP/1.1 for the sidecar's proxies, sans I/O: bytes in, events out; heads in, bytes out.

`parser` turns bytes into events with llhttp (through httptools), `headers` decides what
crosses a hop, `framing` writes bodies, `errors` builds the answers the sidecar makes
itself. Nothing here touches a socket, so every rule is tested by feeding bytes.
"""
