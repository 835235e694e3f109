"""Edge producers: files, replay, load generator, microphone, WebSocket gateway."""
