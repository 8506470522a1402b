"""Corpus synthesis (eSpeak NG) and loaders that turn real-speech folders into manifests."""
