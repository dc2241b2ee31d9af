"""moto_server, with one fix the Rust AWS SDK needs.

moto writes a task's container `cpu` and `memory` as JSON numbers; the ECS API (and the SDK
that parses it) has strings there, so DescribeTasks fails to parse. Real ECS is not affected.

    server.py -H 127.0.0.1 -p PORT
"""

import moto.ecs.models as ecs_models
from moto.server import main

_original_init = ecs_models.Container.__init__


def _init_with_string_sizes(self, task_def):
    _original_init(self, task_def)
    for field in ("cpu", "memory"):
        value = getattr(self, field)
        if value is not None:
            setattr(self, field, str(value))


ecs_models.Container.__init__ = _init_with_string_sizes

if __name__ == "__main__":
    main()
