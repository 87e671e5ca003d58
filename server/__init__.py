"""alignserve: OpenAI-compatible serving with inference-time alignment."""
