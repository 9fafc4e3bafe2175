"""`ipam projects`: an operator maps a project to its organization, which `ipam serve`
requires before anything is written into it, and reads the mapping back."""

from __future__ import annotations

import uuid

from gateway_fixtures import GatewayNode, gateway  # noqa: F401 - fixture

from tests.gateway.test_cli_operator import Ipam, Outcome, ipam, operator_env  # noqa: F401 - fixtures


def test_a_project_is_mapped_once_read_back_and_never_moved(ipam: Ipam) -> None:  # noqa: F811
    project, org, other = (str(uuid.uuid4()) for _ in range(3))
    assert ipam("projects", "get", project) == Outcome(
        1, "", f"error 404 not_found: project {project} has no known organization "
               f"(project {project})\n")
    (header, line) = ipam("projects", "set-organization", project, org).rows()
    assert (header, line) == (["PROJECT_ID", "ORGANIZATION_ID"], [project, org])
    assert ipam.json("projects", "get", project) == {"project_id": project,
                                                    "organization_id": org}
    again = ipam.json("projects", "set-organization", project, org)  # the same: unchanged
    assert again == {"project_id": project, "organization_id": org}
    refused = ipam("projects", "set-organization", project, other)
    assert refused.code == 1 and refused.out == ""
    assert refused.err.startswith("error 409 already_exists: ")
    assert ipam.json("projects", "get", project)["organization_id"] == org
