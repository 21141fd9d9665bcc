"""wsmem._pages (compiled) exposes no Python API: page sources are C-level only."""
