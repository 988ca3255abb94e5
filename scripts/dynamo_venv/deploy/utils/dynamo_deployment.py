"""Stand-in for ``deploy.utils.dynamo_deployment`` (see ``deploy/__init__.py``).

Dynamo's profiler imports three names from it. Thorough sweeps deploy candidates on a cluster through
``DynamoDeploymentClient``; there is none here, so constructing one raises. Rapid mode deploys nothing
and only calls ``cleanup_remaining_deployments`` with an empty list at the end of every run.
"""


class DeploymentFailedError(Exception):
    """A candidate deployment failed (raised by the real client)."""


class DynamoDeploymentClient:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("deploying profiling candidates needs a Kubernetes cluster (thorough mode)")


async def cleanup_remaining_deployments(deployment_clients, namespace=None, *args, **kwargs):
    """The profiler calls this at the end of every run; rapid mode creates no deployment to clean."""
    if deployment_clients:
        raise RuntimeError("cleaning up profiling deployments needs a Kubernetes cluster (thorough mode)")
