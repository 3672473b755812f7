"""Model providers behind one protocol: the self-hosted vLLM deployment and managed HTTP APIs."""
