"""The image a task runs in (`pytest tests/rock/test_images.py`).

    with RockProcess() as rock, rock.client() as client:
        image = ensure_image(client, spec)      # spec.environment.image, or its Dockerfile built by rock

A Dockerfile task is built by `rock serve` over the Docker Engine API with no network and tagged
`ale-task:<hash of Dockerfile and context>`; a second call for the same content returns at once. A failing
build raises `rock.errors.ImageBuildFailed` (its message ends with the build log's tail), a FROM image that
is neither mapped (configs/tasks/images.yaml, at import time) nor here raises `rock.errors.ImageNotFound`.
"""

from __future__ import annotations

from roll.tasks.spec import TaskSpec


def ensure_image(client, spec: TaskSpec) -> str:
    """The image to create `spec`'s sandboxes from, with `client` a rock.sdk.Client."""
    env = spec.environment
    if env.dockerfile is None:
        return env.image
    return client.build_image(env.dockerfile, env.files)


async def ensure_image_async(client, spec: TaskSpec) -> str:
    """`ensure_image` for a rock.sdk.AsyncClient."""
    env = spec.environment
    if env.dockerfile is None:
        return env.image
    return await client.build_image(env.dockerfile, env.files)
