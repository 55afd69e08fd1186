"""Operations around the zoo flow that need no server: the automation recipe, run names, final messages."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_automation_recipe_is_a_valid_prefect_automation():
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    data = yaml.safe_load((ROOT / "flows" / "automation-failed-run.yaml").read_text())
    (automation,) = [AutomationCore.model_validate(a) for a in data["automations"]]
    assert isinstance(automation.trigger, EventTrigger)
    assert "prefect.flow-run.Failed" in automation.trigger.expect
    assert automation.trigger.match_related["prefect.resource.name"] in ("zoo-ranking", ["zoo-ranking"])
    assert [a.type for a in automation.actions] == ["send-notification"]
