"""The foundation: settings, request/response models, typed errors, provider config, quantization rules,
key hashing, pricing and token counting. It imports nothing of ours; every other package stands on it."""
