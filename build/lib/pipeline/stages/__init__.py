"""The DVC stages, one module each: ``python -m pipeline.stages.<stage>`` is the stage's command in ``dvc.yaml``.

Each ``main()`` loads params, reads its inputs, calls the core and writes its outputs. No stage
imports another; what two stages share lives in the core, the adapters or the services.
"""
