"""lenskit: see how a language model decides its next token.

Data flow: model -> adapter -> capture -> stage store (safetensors) -> lens -> stats -> schema/export -> server -> viewer.
"""

__version__ = "0.1.0"
