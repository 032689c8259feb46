"""Ablation sweeps: YAML spec -> Ray Tune + Optuna trials (each a TorchTrainer) -> MLflow Pareto report."""
