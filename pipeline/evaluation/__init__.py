"""The evaluation: sample each policy on held-out prompts (`sampling`), score the samples (`scoring`),
summarise them with bootstrap CIs (`stats`; diversity from `pipeline.diversity`) into a typed
`EvaluationResult` (`result`), read the candidate's RL run for warnings and its best snapshot
(`training_run`), say what it means (`verdict`), and write one `Report` (`report`) as markdown and HTML
with its plots (`markdown`, `html`, `plots`, `writer`). `evaluate.evaluate` runs all of it; the
orchestration calls nothing else.
"""
