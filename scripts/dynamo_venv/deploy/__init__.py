"""Stand-in for the repo-root ``deploy`` package that ai-dynamo 1.6.1 imports but does not ship.

Only ``deploy.utils.dynamo_deployment.cleanup_remaining_deployments`` is imported (by
``dynamo.profiler.profile_sla``); it deletes candidate deployments a thorough sweep left on a
cluster. Here there is no cluster, so the stand-in raises if it is ever called.
"""
