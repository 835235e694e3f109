"""The WebSocket edge: ``streamscribe gateway`` and its client ``streamscribe stream``.

Pure cores — :mod:`.protocol` (messages, close codes), :mod:`.session` (frames → chunks,
events → the session's numbered log), :mod:`.admission` (tokens, Origin, limits, grace),
:mod:`.flow` (flow hints) — and the edges: :mod:`.server` (WebSocket + page + metrics),
:mod:`.router` (the transcripts and events topics back to the sessions held),
:mod:`.client` (the command-line client). The protocol is ``docs/websocket.md``.
"""
