"""Fleet builds: many recipes at once, on a local process pool or with their exports and validations on Ray.

- workspace.py: which recipes (command-line files, `[workspace]` files listing them)
- run.py: `build_fleet`, the per-recipe builds, their outcomes and the fleet's exit code
- junit.py: the combined junit.xml
- ray_executor.py: export jobs and validations as Ray tasks (`--executor ray`)
"""
