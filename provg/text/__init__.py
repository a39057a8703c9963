"""Text side of ProVG: a Hugging Face BERT-family encoder producing L_c, L_s, L_a (Sec. 4.1)."""

from .encoder import DEFAULT_TEXT_ENCODER, LanguageFeatures, TextEncoder, resolve_text_encoder

__all__ = ["DEFAULT_TEXT_ENCODER", "LanguageFeatures", "TextEncoder", "resolve_text_encoder"]
