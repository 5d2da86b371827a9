"""The style presets that ship with StreamDiffusionV2 Studio (TOML + thumbnail PNG each; package data)."""
