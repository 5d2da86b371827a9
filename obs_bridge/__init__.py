"""OBS Studio integration (obs-websocket client, OBS sources in, styled source out). Never imports Qt."""
