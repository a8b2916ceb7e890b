-- Observed run seconds per base compute unit (cost before the model factor) per model and
-- worker class, a moving average over the jobs that succeeded (store/speeds.py). The cost
-- rule calibrates the per-model factors from it and ETAs read the reference model's speed.
CREATE TABLE model_speeds (
    model TEXT NOT NULL,
    worker_class TEXT NOT NULL,
    seconds_per_unit DOUBLE PRECISION NOT NULL,
    samples INTEGER NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (model, worker_class)
);
