"""Prefect flow `calibrate-teachers`: cache the teachers over the labelled eval set (the usual
caching flow, so each teacher still runs once per corpus) and fit each one's calibration."""

from __future__ import annotations

from prefect import flow, get_run_logger

from distill.flows.caching import cache_teachers
from distill.pipeline.caches import open_caches
from distill.pipeline.calibration import calibrate_teachers, check_calibratable
from distill.pipeline.config import DistillConfig, eval_corpus_config, load_config


@flow(name="calibrate-teachers")
def calibrate(config: str | DistillConfig) -> list[dict]:
    config = config if isinstance(config, DistillConfig) else load_config(config)
    check_calibratable(config)
    held_out = eval_corpus_config(config)
    cache_teachers(held_out)
    fits = calibrate_teachers(config, open_caches(held_out))
    for fit in fits:
        get_run_logger().info("calibration %s", fit)
    return fits
