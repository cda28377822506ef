"""Evaluate specs on a dataset: the best single model, Self-MoA of it and the MoA, side by side,
each compared with the single model item by item (McNemar, paired bootstrap).

>>> from langgraph_moa.eval import EvalStore, derive_specs, load_dataset, run_evaluation
>>> items = load_dataset("basic")               # or a JSONL file of your own
>>> specs = derive_specs(load_spec("moa.yaml"))  # single, self-MoA, MoA
>>> async with EvalStore.from_url("sqlite:///moa.sqlite") as store:
...     report = await run_evaluation(items, specs, store, eval_id="basic-1")

The command line is ``moa eval DATASET --spec moa.yaml``.
"""

from langgraph_moa.eval.dataset import (
    BUILTIN,
    DatasetError,
    EvalItem,
    dataset_digest,
    load_dataset,
    select_items,
)
from langgraph_moa.eval.judge import PairwiseJudge, parse_verdict
from langgraph_moa.eval.report import ChartUnavailable, markdown_table, rich_table, write_chart
from langgraph_moa.eval.runner import (
    EvalReport,
    SpecSummary,
    final_answer,
    run_evaluation,
    score_answer,
    summarize,
)
from langgraph_moa.eval.scoring import exact_match, normalize, regex_match, wilson_interval
from langgraph_moa.eval.stats import (
    PairedComparison,
    bootstrap_interval,
    compare_paired,
    mcnemar_exact,
    paired_bootstrap,
)
from langgraph_moa.eval.store import EvalSchemaError, EvalStore, ResultRow
from langgraph_moa.eval.variants import EvalSpec, derive_specs, self_moa_spec, single_spec

__all__ = [
    "BUILTIN",
    "ChartUnavailable",
    "DatasetError",
    "EvalItem",
    "EvalReport",
    "EvalSchemaError",
    "EvalSpec",
    "EvalStore",
    "PairedComparison",
    "PairwiseJudge",
    "ResultRow",
    "SpecSummary",
    "bootstrap_interval",
    "compare_paired",
    "dataset_digest",
    "derive_specs",
    "exact_match",
    "final_answer",
    "load_dataset",
    "markdown_table",
    "mcnemar_exact",
    "normalize",
    "paired_bootstrap",
    "parse_verdict",
    "regex_match",
    "rich_table",
    "run_evaluation",
    "score_answer",
    "select_items",
    "self_moa_spec",
    "single_spec",
    "summarize",
    "wilson_interval",
    "write_chart",
]
