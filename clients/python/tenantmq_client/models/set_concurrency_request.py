from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define

T = TypeVar("T", bound="SetConcurrencyRequest")


@_attrs_define
class SetConcurrencyRequest:
    """Change a tenant's worker pool size.

    Attributes:
        workers (int): 1 to `max_workers` (64 unless configured otherwise).
    """

    workers: int

    def to_dict(self) -> dict[str, Any]:
        workers = self.workers

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "workers": workers,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        workers = d.pop("workers")

        set_concurrency_request = cls(
            workers=workers,
        )

        return set_concurrency_request
