"""HSPD: rewrite every toxic text of a corpus into a safe text that keeps its meaning (docs/corpus-rewriting.md).

``detox rewrite`` (``runner.run_rewrite``) streams a JSONL / text / Parquet corpus through
``pipeline.Rewriter`` (prompt, SoCD or CD decoding, candidates at several temperatures,
extraction, de-duplication, fusion ranking), resumably, locally or on Ray Data.
"""

from .pipeline import MODES, RewriteConfig, Rewriter
from .rank import TextEmbedder, best_index, dedupe, fusion_scores
from .templates import TEMPLATES, RewriteTemplate, extract_answer, load_template

__all__ = ["MODES", "RewriteConfig", "Rewriter", "TextEmbedder", "best_index", "dedupe", "fusion_scores",
           "TEMPLATES", "RewriteTemplate", "extract_answer", "load_template", "run_rewrite"]


def run_rewrite(*args, **kwargs):
    from .runner import run_rewrite as _run

    return _run(*args, **kwargs)
