from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar
from uuid import UUID

from attrs import define as _attrs_define
from attrs import field as _attrs_field

T = TypeVar("T", bound="ReplayResult")


@_attrs_define
class ReplayResult:
    """
    Attributes:
        complete (bool): `false` when the replay stopped before it went through the whole DLQ: at one of its bounds
            (10,000
            messages moved, `read.replay_time_budget` (10 s by default), or, for a selective replay, 100,000
            unselected messages walked past), or when the broker stopped taking its publishes after some were
            replayed. Replay again to continue.
        not_found (list[UUID]): Selected ids that were not in the DLQ; listed only when `complete`.
        replayed (int): How many messages went back to the tenant's queue (with their failure history cleared).
    """

    complete: bool
    not_found: list[UUID]
    replayed: int
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        complete = self.complete

        not_found = []
        for not_found_item_data in self.not_found:
            not_found_item = str(not_found_item_data)
            not_found.append(not_found_item)

        replayed = self.replayed

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "complete": complete,
                "not_found": not_found,
                "replayed": replayed,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        complete = d.pop("complete")

        not_found = []
        _not_found = d.pop("not_found")
        for not_found_item_data in _not_found:
            not_found_item = UUID(not_found_item_data)

            not_found.append(not_found_item)

        replayed = d.pop("replayed")

        replay_result = cls(
            complete=complete,
            not_found=not_found,
            replayed=replayed,
        )

        replay_result.additional_properties = d
        return replay_result

    @property
    def additional_keys(self) -> list[str]:
        return list(self.additional_properties.keys())

    def __getitem__(self, key: str) -> Any:
        return self.additional_properties[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.additional_properties[key] = value

    def __delitem__(self, key: str) -> None:
        del self.additional_properties[key]

    def __contains__(self, key: str) -> bool:
        return key in self.additional_properties
