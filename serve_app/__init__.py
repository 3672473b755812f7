"""llmserve's public surface: the settings, the application builder and the typed models.

from serve_app import Settings, build_app, ChatRequest
"""

from core.models import ChatChunk, ChatMessage, ChatRequest, ChatResponse, Citation, RagOptions, Usage
from core.settings import Settings
from serve_app.builder import build_app

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
