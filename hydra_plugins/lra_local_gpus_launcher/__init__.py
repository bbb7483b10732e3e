"""The `local_gpus` launcher (conf/hydra/launcher/local_gpus.yaml): one sweep job per device slot."""
