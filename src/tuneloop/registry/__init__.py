"""The model registry: versions with lineage and aliases (see :mod:`tuneloop.registry.store`).

    tuneloop registry register support runs/support-bot --alias production
    tuneloop registry list ; tuneloop registry show support ; tuneloop registry diff support 1 2
    tuneloop registry promote support 3 ; tuneloop registry rollback support
    tuneloop serve --model registry:support@production      # follows the alias as it moves
"""
