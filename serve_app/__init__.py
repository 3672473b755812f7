"""llmserve's public surface: the settings, the application builder and the typed models.

from serve_app import Settings, build_app, ChatRequest
"""

from serve_app.builder import build_app
from serve_app.models import ChatChunk, ChatMessage, ChatRequest, ChatResponse, Citation, RagOptions, Usage
from serve_app.settings import Settings

__all__ = [
    "ChatChunk",
    "ChatMessage",
    "ChatRequest",
    "ChatResponse",
    "Citation",
    "RagOptions",
    "Settings",
    "Usage",
    "build_app",
]
