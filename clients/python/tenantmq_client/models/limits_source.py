from enum import Enum


class LimitsSource(str, Enum):
    DEFAULT = "default"
    TENANT = "tenant"

    def __str__(self) -> str:
        return str(self.value)
