"""Configuration errors and the paper's experiment variants, shared by `configs/` and the trainer's validation.

`VARIANTS` are the ablation rows of the paper's Table 3 plus the rejection-sampling baseline, as switches on one
config: `refiner` (Meta-Refiner on in rollouts), `process_reward` (hybrid reward, else outcome EM only), `joint`
(meta-actions trained with the trajectory's advantage), `rejection` (learn from successful trajectories only).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration, found before anything compiles; the message names the field."""


VARIANTS = {
    "search_r1": dict(refiner=False, process_reward=False, joint=False),
    "meta_refiner": dict(refiner=True, process_reward=False, joint=False),
    "meta_refiner_process": dict(refiner=True, process_reward=True, joint=False),
    "search_r2": dict(refiner=True, process_reward=True, joint=True),
    "rejection_sampling": dict(refiner=False, process_reward=False, joint=False, rejection=True),
}


def variant_fields(variant: str) -> dict[str, bool]:
    """The config fields a variant sets: {"refiner.enabled": ..., "reward.outcome_only": ..., ...}."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant={variant!r}: expected one of {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    return {"refiner.enabled": v["refiner"], "reward.outcome_only": not v["process_reward"],
            "rl.train_meta_actions": v["joint"], "rl.rejection_sampling": v.get("rejection", False)}


def apply_variant(config, variant: str):
    """Sets the switches of one of VARIANTS (the paper's Table 3 rows and the rejection-sampling baseline) on a
    config and labels it; returns the config."""
    for field, value in variant_fields(variant).items():  # ConfigError naming `variant` if unknown
        section, name = field.split(".")
        config[section][name] = value
    config.variant = variant
    return config


def check_variant(config) -> None:
    """Raises ConfigError if `config.variant` is unknown or a switch was overridden against it (the label would lie)."""
    for field, want in variant_fields(config.variant).items():
        section, name = field.split(".")
        got = config[section][name]
        if bool(got) != want:
            raise ConfigError(f"{field}={got} contradicts variant={config.variant!r} (which sets {want}); "
                              f"pick the variant that matches, e.g. one of {sorted(VARIANTS)}")
