"""Task families from the papers (see ``learned_dco.tasks.base`` for the protocol)."""

from learned_dco.tasks.base import TaskFamilyBase, TaskInfo, check_fields, sample_tasks

__all__ = ["TaskFamilyBase", "TaskInfo", "check_fields", "sample_tasks"]
