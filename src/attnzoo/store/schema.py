"""The store's schema: one ordered list of migrations. This module owns every table definition.

A store records its schema version in ``attnzoo_meta``. Opening a store applies the missing
migrations in one transaction; a store written by a newer attnzoo is refused. Add a migration by
appending to ``MIGRATIONS`` (never edit a released one).
"""

from __future__ import annotations

APP_ID = "attnzoo-store"

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "runs, mixer specs, correctness checks, speed results, skips and failures",
        [
            """CREATE TABLE attnzoo_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)""",
            """CREATE SEQUENCE run_ids START 1""",
            """CREATE TABLE runs (
                run_id BIGINT PRIMARY KEY DEFAULT nextval('run_ids'),
                kind VARCHAR NOT NULL,            -- 'speed', 'peers', 'quality', 'cp'
                suite VARCHAR,
                status VARCHAR NOT NULL,          -- running | complete | interrupted | failed
                started_at TIMESTAMP NOT NULL,
                finished_at TIMESTAMP,
                command VARCHAR,
                git_sha VARCHAR,
                host VARCHAR,
                pid INTEGER,
                env VARCHAR NOT NULL,             -- JSON: versions, CPU, threads, GPU, ...
                config VARCHAR NOT NULL,          -- JSON: the suite as run
                gemm_gflops DOUBLE,               -- this machine's fp32 GEMM rate, same run
                note VARCHAR
            )""",
            """CREATE TABLE mixer_specs (
                run_id BIGINT NOT NULL,
                name VARCHAR NOT NULL,
                spec VARCHAR NOT NULL,            -- JSON of MixerSpec.to_dict()
                PRIMARY KEY (run_id, name)
            )""",
            """CREATE TABLE checks (
                run_id BIGINT NOT NULL,
                mixer VARCHAR NOT NULL,
                impl VARCHAR NOT NULL,
                pattern VARCHAR NOT NULL,
                max_abs_err DOUBLE,
                ok BOOLEAN NOT NULL,
                detail VARCHAR,
                recorded_at TIMESTAMP NOT NULL
            )""",
            """CREATE TABLE speed (
                run_id BIGINT NOT NULL,
                mixer VARCHAR NOT NULL,
                impl VARCHAR NOT NULL,
                pattern VARCHAR NOT NULL,
                mask VARCHAR NOT NULL,
                mode VARCHAR NOT NULL,            -- fwd | fwdbwd
                batch INTEGER NOT NULL,
                seq_len INTEGER NOT NULL,
                ctx_len INTEGER NOT NULL,
                d_model INTEGER NOT NULL,
                heads INTEGER,
                head_dim INTEGER,
                repeats INTEGER NOT NULL,
                median_s DOUBLE NOT NULL,
                min_s DOUBLE NOT NULL,
                peak_bytes BIGINT,
                flops BIGINT,
                gflops_per_s DOUBLE,
                gemm_fraction DOUBLE,
                recorded_at TIMESTAMP NOT NULL
            )""",
            """CREATE TABLE skips (
                run_id BIGINT NOT NULL,
                mixer VARCHAR NOT NULL,
                impl VARCHAR NOT NULL,
                pattern VARCHAR NOT NULL,
                mask VARCHAR NOT NULL,
                mode VARCHAR NOT NULL,
                seq_len INTEGER NOT NULL,
                kind VARCHAR NOT NULL,            -- skipped | failed
                reason VARCHAR NOT NULL,
                recorded_at TIMESTAMP NOT NULL
            )""",
        ],
    ),
    (
        2,
        "peer comparisons: ours vs a peer implementation of the same math, one run",
        [
            """CREATE TABLE peers (
                run_id BIGINT NOT NULL,
                case_name VARCHAR NOT NULL,
                mechanism VARCHAR NOT NULL,
                peer VARCHAR NOT NULL,
                size VARCHAR NOT NULL,            -- human label of the shape
                n INTEGER NOT NULL,               -- the size parameter (T, or image side)
                ours_s DOUBLE NOT NULL,
                peer_s DOUBLE NOT NULL,
                ratio DOUBLE NOT NULL,            -- peer_s / ours_s: > 1 means ours is faster
                ours_flops BIGINT,
                ours_gflops DOUBLE,
                gemm_fraction DOUBLE,
                ours_peak_bytes BIGINT,
                peer_peak_bytes BIGINT,
                max_abs_diff DOUBLE NOT NULL,
                rel_diff DOUBLE NOT NULL,
                ok BOOLEAN NOT NULL,              -- rel_diff within the case's tolerance
                repeats INTEGER NOT NULL,
                detail VARCHAR,
                recorded_at TIMESTAMP NOT NULL
            )""",
        ],
    ),
    (
        3,
        "quality runs: one row per trained model (config, seed, final metric) and its curve",
        [
            """CREATE TABLE quality (
                run_id BIGINT NOT NULL,
                task VARCHAR NOT NULL,
                task_config VARCHAR NOT NULL,     -- JSON of the task's config as trained
                mixer VARCHAR NOT NULL,
                d_model INTEGER NOT NULL,
                num_layers INTEGER NOT NULL,
                lr DOUBLE NOT NULL,
                seed INTEGER NOT NULL,
                params BIGINT NOT NULL,
                state_size BIGINT,                -- recurrent state floats per sequence, if defined
                steps_run INTEGER NOT NULL,
                status VARCHAR NOT NULL,          -- complete | early-stop | interrupted
                final_metric DOUBLE,
                best_metric DOUBLE,
                best_of_sweep BOOLEAN NOT NULL,   -- the best lr of its (task, mixer, width, seed)
                seconds DOUBLE NOT NULL,
                recorded_at TIMESTAMP NOT NULL
            )""",
            """CREATE TABLE quality_curve (
                run_id BIGINT NOT NULL,
                task VARCHAR NOT NULL,
                mixer VARCHAR NOT NULL,
                d_model INTEGER NOT NULL,
                lr DOUBLE NOT NULL,
                seed INTEGER NOT NULL,
                step INTEGER NOT NULL,
                train_loss DOUBLE NOT NULL,
                eval_loss DOUBLE NOT NULL,
                metric DOUBLE NOT NULL,
                seconds DOUBLE NOT NULL,
                recorded_at TIMESTAMP NOT NULL
            )""",
        ],
    ),
    (
        4,
        "extra evaluations of a trained model (e.g. greedy pointer decoding on longer inputs); "
        "curve points record their task point's config",
        [
            """CREATE TABLE quality_eval (
                run_id BIGINT NOT NULL,
                task VARCHAR NOT NULL,
                task_config VARCHAR,              -- JSON of the task's config, as in quality
                mixer VARCHAR NOT NULL,
                d_model INTEGER NOT NULL,
                lr DOUBLE NOT NULL,
                seed INTEGER NOT NULL,
                name VARCHAR NOT NULL,            -- e.g. greedy_n11_20
                value DOUBLE,
                recorded_at TIMESTAMP NOT NULL
            )""",
            # several points of one task (Zoology's (L, kv) grid) share task/mixer/width/lr/seed
            """ALTER TABLE quality_curve ADD COLUMN task_config VARCHAR""",
        ],
    ),
    (
        5,
        "context-parallel runs: one row per (case, rank) and the cases skipped",
        [
            """CREATE TABLE cp (
                run_id BIGINT NOT NULL,
                strategy VARCHAR NOT NULL,        -- ring | ring-allgather | ulysses | hybrid | state-*
                sharding VARCHAR NOT NULL,        -- contiguous | zigzag | striped
                mask VARCHAR NOT NULL,
                seq_len INTEGER NOT NULL,         -- global T
                mode VARCHAR NOT NULL,            -- fwd | fwd+bwd
                world_size INTEGER NOT NULL,
                rank INTEGER NOT NULL,
                latency_s DOUBLE NOT NULL,        -- median over repeats of the slowest rank
                rank_wall_s DOUBLE NOT NULL,      -- this rank's median wall time
                rank_cpu_s DOUBLE NOT NULL,       -- this rank's median CPU time (its compute)
                peak_bytes BIGINT NOT NULL,       -- allocated during one call on this rank
                bytes_sent BIGINT NOT NULL,       -- counted by Comm over one call
                bytes_analytic BIGINT NOT NULL,   -- the strategy's formula
                pairs DOUBLE,                     -- attended pairs computed (per head); softmax only
                max_abs_err DOUBLE,               -- vs one process, on rank 0 (NULL elsewhere)
                exact BOOLEAN,
                recorded_at TIMESTAMP NOT NULL
            )""",
            """CREATE TABLE cp_skips (
                run_id BIGINT NOT NULL,
                strategy VARCHAR NOT NULL,
                sharding VARCHAR NOT NULL,
                mask VARCHAR NOT NULL,
                seq_len INTEGER NOT NULL,
                mode VARCHAR NOT NULL,
                world_size INTEGER NOT NULL,
                reason VARCHAR NOT NULL,
                recorded_at TIMESTAMP NOT NULL
            )""",
        ],
    ),
    (
        6,
        "cp rows record the scale of their error (max |one process|): exact is relative",
        ["""ALTER TABLE cp ADD COLUMN ref_max DOUBLE"""],
    ),
    (
        7,
        "quality runs record what each task point is (metric, direction, patterns, tokens per "
        "layer) and speed runs their baseline, so the report reads them instead of mirroring the "
        "bench; runs before this version get what the bench used when they were recorded",
        [
            """CREATE TABLE quality_tasks (
                run_id BIGINT NOT NULL,
                task VARCHAR NOT NULL,
                task_config VARCHAR NOT NULL,     -- JSON, as in quality
                description VARCHAR,
                metric VARCHAR NOT NULL,          -- what the metric measures (axis label)
                maximize BOOLEAN NOT NULL,        -- higher is better
                patterns VARCHAR NOT NULL,        -- JSON list: speed patterns, preferred first
                fmt VARCHAR NOT NULL,             -- number format of the metric
                bounded BOOLEAN NOT NULL,         -- the metric lies in [0, 1]
                tokens INTEGER,                   -- tokens one mixer layer sees, if defined
                point_keys VARCHAR NOT NULL,      -- JSON [[config key, short label], ...]
                recorded_at TIMESTAMP NOT NULL
            )""",
            # the seven tasks of schema v6, as the bench then described them
            """INSERT INTO quality_tasks
               SELECT q.run_id, q.task, q.task_config, NULL, k.metric, k.maximize, k.patterns,
                      k.fmt, k.bounded,
                      CASE
                        WHEN q.task = 'mqar'
                          THEN CAST(json_extract(q.task_config, '$.seq_len') AS INTEGER)
                        WHEN q.task = 'listops'
                          THEN CAST(json_extract(q.task_config, '$.max_length') AS INTEGER)
                        WHEN q.task = 'regression'
                          THEN 2 * CAST(json_extract(q.task_config, '$.num_pairs') AS INTEGER)
                        WHEN q.task LIKE 'pointer-%'
                          THEN list_max(CAST(json_extract(q.task_config, '$.train_n') AS INTEGER[]))
                        WHEN q.task IN ('shapes', 'digits')
                          THEN CAST(power(CAST(json_extract(q.task_config, '$.image_size')
                                                    AS INTEGER) // 4, 2) AS INTEGER)
                      END,
                      CASE WHEN q.task = 'mqar'
                           THEN '[["seq_len", "L"], ["num_kv_pairs", "kv"]]' ELSE '[]' END,
                      now()
               FROM (SELECT DISTINCT run_id, task, task_config FROM quality) q
               JOIN (VALUES
                 ('mqar', 'accuracy', true, '["causal-self"]', '.3f', true),
                 ('listops', 'accuracy', true, '["noncausal-self"]', '.3f', true),
                 ('regression', 'MSE', false, '["causal-self"]', '.3g', false),
                 ('pointer-sort', 'greedy exact match', true,
                  '["noncausal-self", "causal-self"]', '.3f', true),
                 ('pointer-hull', 'greedy exact match', true,
                  '["noncausal-self", "causal-self"]', '.3f', true),
                 ('shapes', 'accuracy', true, '["noncausal-self"]', '.3f', true),
                 ('digits', 'accuracy', true, '["noncausal-self"]', '.3f', true)
               ) AS k(task, metric, maximize, patterns, fmt, bounded) ON q.task = k.task""",
            # speed runs name the baseline of their efficiency lengths; it was softmax before
            """UPDATE runs SET config = json_merge_patch(config, '{"baseline": "softmax"}')
               WHERE kind = 'speed' AND json_extract(config, '$.baseline') IS NULL""",
        ],
    ),
    (
        8,
        "numbers people can trust: the quantiles of every timing (speed) and the spread of both "
        "sides of a peer ratio; the evidence behind every skip; runs record a heartbeat and the "
        "machine's load at their start and end; notes a run adds while it runs",
        [
            """ALTER TABLE speed ADD COLUMN max_s DOUBLE""",
            """ALTER TABLE speed ADD COLUMN q1_s DOUBLE""",
            """ALTER TABLE speed ADD COLUMN q3_s DOUBLE""",
            # JSON: the measured points, the fit and the model a prediction came from
            """ALTER TABLE skips ADD COLUMN evidence VARCHAR""",
            # interquartile range / median of each side's interleaved timings
            """ALTER TABLE peers ADD COLUMN ours_spread DOUBLE""",
            """ALTER TABLE peers ADD COLUMN peer_spread DOUBLE""",
            """ALTER TABLE runs ADD COLUMN heartbeat_at TIMESTAMP""",
            # JSON: {"start": {load, busy processes}, "end": {...}, "quiet": bool}
            """ALTER TABLE runs ADD COLUMN machine VARCHAR""",
            """CREATE TABLE run_notes (
                run_id BIGINT NOT NULL,
                kind VARCHAR NOT NULL,            -- e.g. prediction-wrong, machine-busy
                text VARCHAR NOT NULL,
                recorded_at TIMESTAMP NOT NULL
            )""",
        ],
    ),
]

LATEST = MIGRATIONS[-1][0]
