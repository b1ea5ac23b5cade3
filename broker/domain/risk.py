"""The risk taxonomy: what every IAM action can do that a human must see before it is granted.

Nine classes, most dangerous first (:data:`TAXONOMY`).  Each has a plain-words sentence for the
people who co-sign, the capability a template must declare to grant it, and the number of
co-signers it needs in any environment (production templates need two anyway, see the
guardrails).  Which actions fall in which class is data: :data:`RISK_ROWS`, each row with the
reason it exists and where the knowledge comes from.  Rows built from cloudsplaining's published
lists (:mod:`broker.domain.risk_sources`, generated from the pinned package) are used wherever
cloudsplaining carries the knowledge; the rest are curated here, each with its reason.

A row matches an action by exact name or IAM wildcard (``cloudtrail:Stop*``, ``guardduty:*``),
optionally only at some access levels, or by access level alone.  Wildcards in templates are
classified by what they expand to (the guardrails expand them against the action database before
asking), so ``ssm:Send*`` is as risky as ``ssm:SendCommand``.  An action the database does not
know never reaches this module: the guardrails refuse it first (fail closed).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from broker.domain import risk_sources as cloudsplaining
from broker.domain.actions import AccessLevel, ActionInfo, Risk, action_pattern_regex

CHANGES = (AccessLevel.WRITE, AccessLevel.PERMISSIONS_MANAGEMENT)
ANY_LEVEL = tuple(AccessLevel)


@dataclass(frozen=True)
class RiskClass:
    """One class of danger: what it means, how a template declares it, who must co-sign."""

    risk: Risk
    title: str                # a few words ("code execution as another identity")
    sentence: str             # what a co-signer must understand, in plain words
    capability: str           # the template's ``capabilities:`` entry that declares it
    approvals: int            # co-signers it needs in any environment
    approval_reason: str      # why that many

    def to_dict(self) -> dict[str, object]:
        return {"class": self.risk.value, "title": self.title, "sentence": self.sentence,
                "capability": self.capability, "approvals": self.approvals}


# Most dangerous first: the order people read the risk in (explain, API, approver page, webhook).
TAXONOMY: tuple[RiskClass, ...] = (
    RiskClass(Risk.ORGANIZATION_CONTROL, "organization and account control",
              "can change the AWS organization or account itself: create, close or move accounts, attach or "
              "detach the policies that bind every account, change account settings",
              "organization-control", 2, "one mistake reaches every account of the organization"),
    RiskClass(Risk.PERMISSION_CHANGING, "permission changes and privilege escalation",
              "can change who may do what (policies, grants, trust, credentials of other principals) or act as "
              "another principal: a way to more power than this template grants",
              "permissions-management", 2, "a change of permissions outlives the session and can grant anything"),
    RiskClass(Risk.DEFENSE_EVASION, "defense evasion",
              "can blind the defenders: stop, delete or redirect audit logs, turn off or narrow threat "
              "detection, configuration recording and alarms",
              "defense-evasion", 2, "once the logs are off nobody sees what else happened"),
    RiskClass(Risk.CODE_EXECUTION, "code execution as another identity",
              "can run code of its choosing as another identity (an instance, function, container, build, job "
              "or stack role), with that identity's permissions instead of this template's",
              "code-execution", 2, "the code runs with permissions the session policy does not limit"),
    RiskClass(Risk.CREDENTIAL_EXPOSURE, "credential and secret exposure",
              "hands out secrets or credentials (secret values, passwords, tokens, keys) that can keep working "
              "after this session ends",
              "credential-exposure", 1, "reading one named secret is a routine, reviewable act"),
    RiskClass(Risk.RESOURCE_EXPOSURE, "resource exposure (public or cross-account)",
              "can open a resource to the internet or to another account: resource policies, ACLs, sharing, "
              "firewall openings, public URLs",
              "resource-exposure", 2, "what is exposed may be copied before anyone notices"),
    RiskClass(Risk.DATA_EXFILTRATION, "data exfiltration paths",
              "can open a path that copies data out of its place: replication, log subscriptions, exports, "
              "snapshots, traffic mirroring",
              "data-exfiltration", 2, "the copy keeps flowing after the session ends"),
    RiskClass(Risk.DESTRUCTIVE, "destruction",
              "can delete or stop things that may not come back: data, infrastructure, running workloads",
              "destructive", 1, "the damage is bounded by the named resources the template allows"),
    RiskClass(Risk.PRODUCTION_TRAFFIC, "production traffic and availability",
              "can change what is served and how: DNS, load balancers, deployments, scaling, database and "
              "cache settings",
              "production-traffic", 1, "a reviewed change to serving is routine; production needs two anyway"),
)
BY_RISK: dict[Risk, RiskClass] = {c.risk: c for c in TAXONOMY}
RANK: dict[Risk, int] = {c.risk: i for i, c in enumerate(TAXONOMY)}
# Capabilities a template may declare, and the class each acknowledges.
CAPABILITIES: dict[str, Risk] = {c.capability: c.risk for c in TAXONOMY}


def ordered(risks: Iterable[Risk]) -> list[Risk]:
    """Most dangerous first."""
    return sorted(set(risks), key=RANK.__getitem__)


@dataclass(frozen=True)
class RiskRow:
    """Actions that carry ``risk``: by name pattern, access level, or both, with the reason."""

    risk: Risk
    reason: str
    actions: tuple[str, ...] = ()                     # service:Action, IAM wildcards allowed
    levels: tuple[AccessLevel, ...] = ANY_LEVEL       # ... only at these access levels
    every_action_at_levels: bool = False              # ... or every action at ``levels`` (minus ``except_services``)
    except_services: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ()                       # action-name prefixes, any service ("Delete")
    source: str = "curated"

    def matches(self, info: ActionInfo) -> bool:
        if info.access_level not in self.levels:
            return False
        if self.every_action_at_levels:
            return info.service not in self.except_services
        if self.verbs and any(_starts_with_verb(info.name, verb) for verb in self.verbs):
            return True
        names = _row_names(self).get(info.service)
        if names is None:
            return False
        exact, pattern = names
        lowered = info.name.lower()
        return lowered in exact or (pattern is not None and pattern.fullmatch(lowered) is not None)


def _starts_with_verb(name: str, verb: str) -> bool:
    """``DeleteObject`` starts with the verb ``Delete``; ``Deleted``/``Describe`` do not match ``Delete``."""
    if name.isupper():          # API Gateway's HTTP-verb actions: apigateway:DELETE
        return name == verb.upper()
    if not name.startswith(verb):
        return False
    rest = name[len(verb):]
    return not rest or not rest[0].islower()


@functools.cache
def _row_names(row: RiskRow) -> dict[str, tuple[frozenset[str], re.Pattern[str] | None]]:
    """Per service prefix: the row's exact names (lower case) and one alternation of its wildcard
    patterns (None without any).  Most rows name actions exactly: a set lookup, no regex to compile
    (a cold ``broker scopes lint`` compiles only the few wildcard rows it meets)."""
    exact: dict[str, set[str]] = {}
    wild: dict[str, list[str]] = {}
    for action in row.actions:
        service, _, name = action.lower().partition(":")
        exact.setdefault(service, set())
        if any(c in name for c in "*?"):
            wild.setdefault(service, []).append(action_pattern_regex(name).pattern)
        else:
            exact[service].add(name)
    return {service: (frozenset(names), re.compile("|".join(f"(?:{p})" for p in wild[service]), re.DOTALL)
                      if service in wild else None)
            for service, names in exact.items()}


# ---------------------------------------------------------------------------------------------
# Knowledge from cloudsplaining, and where the broker disagrees with using it as is.

# Steps of cloudsplaining's escalation methods that do not, by themselves, run code as another
# identity (the method needs them only together with the step that does).
NOT_CODE_EXECUTION_BY_ITSELF: dict[str, str] = {
    "dynamodb:createtable": "creates a table that feeds a trigger; the function it triggers is the risk",
    "dynamodb:putitem": "writes an item that fires a trigger; the function it triggers is the risk",
    "ecs:createcluster": "an empty cluster runs nothing until a task or service is started",
    "ec2:startinstances": "restarts an instance with the code it already has (production traffic covers it)",
    "ec2:stopinstances": "stops an instance (destructive and production traffic cover it)",
    "ec2:describeinstances": "reads instance metadata",
    "ecs:describetasks": "reads task metadata",
    "sagemaker:startnotebookinstance": "restarts a notebook with the configuration it already has",
    "sagemaker:stopnotebookinstance": "stops a notebook",
    "lambda:invokefunction": "runs the function's own, already deployed code with the caller's input",
    "lambda:createeventsourcemapping": "wires an event source to a function's own, already deployed code",
    "lambda:addpermission": "a resource-policy change (permission changes and resource exposure cover it)",
    "iam:passrole": "handing over a role is a permission change; the service that runs code is the risk",
    "cloudformation:createstack": "without a role (iam:PassRole, which the guardrails refuse beside it) a new "
                                  "stack is built with the caller's own, session-scoped permissions",
}
# cloudsplaining's read-only data-exfiltration list mixes secrets with object reads.
NOT_SECRET: dict[str, str] = {
    "s3:getobject": "reads objects the template names; the guardrails refuse unscoped resources, which is "
                    "what cloudsplaining warns about (s3:GetObject without resource constraints)",
}
IDENTITY_SERVICES = ("iam", "sts", "sso", "sso-directory", "identitystore", "organizations", "account")


def _escalation_steps() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(permission-changing steps, code-running steps) of cloudsplaining's escalation methods."""
    steps = sorted({a for actions in cloudsplaining.PRIVILEGE_ESCALATION_METHODS.values() for a in actions})
    identity = tuple(a for a in steps if a.split(":", 1)[0] in ("iam", "sts"))
    running = tuple(a for a in steps if a not in identity and a not in NOT_CODE_EXECUTION_BY_ITSELF)
    return identity, running


_ESCALATING_IDENTITY_STEPS, _CODE_RUNNING_STEPS = _escalation_steps()
_SOURCE = f"cloudsplaining {cloudsplaining.CLOUDSPLAINING_VERSION}"


RISK_ROWS: tuple[RiskRow, ...] = (
    # --- organization and account control
    RiskRow(Risk.ORGANIZATION_CONTROL, "every change to AWS Organizations, the account itself or Control Tower",
            actions=("organizations:*", "account:*", "controltower:*"), levels=CHANGES),
    RiskRow(Risk.ORGANIZATION_CONTROL, "account-wide IAM settings (alias, password policy, STS token version)",
            actions=("iam:CreateAccountAlias", "iam:DeleteAccountAlias", "iam:UpdateAccountPasswordPolicy",
                     "iam:DeleteAccountPasswordPolicy", "iam:SetSecurityTokenServicePreferences",
                     "iam:UpdateAccountEmailAddress", "iam:UpdateAccountName",
                     "iam:EnableOrganizationsRootCredentialsManagement",
                     "iam:DisableOrganizationsRootCredentialsManagement", "iam:EnableOrganizationsRootSessions",
                     "iam:DisableOrganizationsRootSessions", "cloudformation:ActivateOrganizationsAccess")),
    # --- permission changes and privilege escalation
    RiskRow(Risk.PERMISSION_CHANGING, "AWS classifies it as permissions management",
            levels=(AccessLevel.PERMISSIONS_MANAGEMENT,), every_action_at_levels=True),
    RiskRow(Risk.PERMISSION_CHANGING, "a step of a published privilege-escalation method",
            actions=_ESCALATING_IDENTITY_STEPS, source=f"{_SOURCE} PRIVILEGE_ESCALATION_METHODS"),
    RiskRow(Risk.PERMISSION_CHANGING, "lets the caller act as another principal",
            actions=("iam:PassRole", "sts:AssumeRole", "sts:AssumeRoleWithSAML", "sts:AssumeRoleWithWebIdentity",
                     "sts:GetFederationToken", "iam:CreateAccessKey", "iam:CreateLoginProfile",
                     "iam:UpdateLoginProfile", "iam:CreateServiceSpecificCredential", "ssm:StartSession",
                     "ec2-instance-connect:SendSSHPublicKey", "ec2-instance-connect:SendSerialConsoleSSHPublicKey",
                     "eks:CreateAccessEntry", "eks:AssociateAccessPolicy")),
    RiskRow(Risk.PERMISSION_CHANGING, "gives a principal, a pod, a database or a machine an IAM role or a way in, or "
            "takes a member account's root (delegations, pod identities, access entries, identity providers)",
            actions=("sts:AssumeRoot", "iam:CreateDelegationRequest", "iam:AcceptDelegationRequest",
                     "iam:AssociateDelegationRequest", "eks:CreatePodIdentityAssociation",
                     "eks:UpdatePodIdentityAssociation", "eks:UpdateAccessEntry", "eks:DisassociateAccessPolicy",
                     "eks:AssociateIdentityProviderConfig", "rds:AddRoleToDBCluster", "rds:AddRoleToDBInstance",
                     "ssm:UpdateManagedInstanceRole")),
    RiskRow(Risk.PERMISSION_CHANGING, "changes who holds which permission set, group or user in IAM Identity Center "
            "or a Cognito user pool (assignments, inline policies, memberships, sign-in attributes)",
            actions=("sso:*AccountAssignment*", "sso:*PermissionSet*", "identitystore:*GroupMembership*",
                     "identitystore:UpdateUser", "cognito-idp:AdminAddUserToGroup", "cognito-idp:AdminCreateUser"),
            levels=CHANGES),
    RiskRow(Risk.PERMISSION_CHANGING, "sets or resets another user's password, so the caller can sign in as them",
            actions=("ds:ResetUserPassword", "finspace:ResetUserPassword", "cognito-idp:AdminSetUserPassword",
                     "cognito-idp:AdminResetUserPassword")),
    # --- defense evasion
    RiskRow(Risk.DEFENSE_EVASION, "every change to the audit and detection services can narrow, redirect or "
            "silence them (trails, detectors, recorders, findings, filters, trusted IP lists)",
            actions=("cloudtrail:*", "guardduty:*", "config:*", "securityhub:*", "inspector:*", "inspector2:*",
                     "macie2:*", "detective:*", "access-analyzer:*", "auditmanager:*", "fms:*",
                     "securitylake:*"), levels=CHANGES),
    RiskRow(Risk.DEFENSE_EVASION, "deletes or shortens the logs investigators read, or cuts their shipping",
            actions=("logs:DeleteLogGroup", "logs:DeleteLogStream", "logs:PutRetentionPolicy",
                     "logs:DeleteSubscriptionFilter", "logs:DeleteMetricFilter", "logs:DisassociateKmsKey",
                     "logs:DeleteDataProtectionPolicy", "logs:DeleteAccountPolicy", "ec2:DeleteFlowLogs",
                     "s3:PutBucketLogging", "route53resolver:DeleteResolverQueryLogConfig",
                     "route53resolver:DisassociateResolverQueryLogConfig", "wafv2:DeleteLoggingConfiguration",
                     "elasticloadbalancing:ModifyLoadBalancerAttributes", "redshift:DisableLogging",
                     "wafv2:PutLoggingConfiguration", "network-firewall:UpdateLoggingConfiguration",
                     "ecr:PutRegistryScanningConfiguration", "ecr:PutImageScanningConfiguration")),
    RiskRow(Risk.DEFENSE_EVASION, "silences the alarms and rules that page people",
            actions=("cloudwatch:DeleteAlarms", "cloudwatch:DisableAlarmActions", "cloudwatch:SetAlarmState",
                     "cloudwatch:PutMetricAlarm", "cloudwatch:PutCompositeAlarm", "cloudwatch:DisableInsightRules",
                     "events:DisableRule", "events:DeleteRule", "events:RemoveTargets", "events:PutRule",
                     "cloudwatch:PutAlarmMuteRule", "cloudwatch:StopMetricStreams", "logs:PutMetricFilter",
                     "sns:Unsubscribe")),
    # --- code execution as another identity
    RiskRow(Risk.CODE_EXECUTION, "a code-running step of a published privilege-escalation method",
            actions=_CODE_RUNNING_STEPS, source=f"{_SOURCE} PRIVILEGE_ESCALATION_METHODS"),
    RiskRow(Risk.CODE_EXECUTION, "runs commands or code on instances, containers and builds as their roles",
            actions=("ssm:SendCommand", "ssm:StartSession", "ssm:StartAutomationExecution", "ssm:CreateAssociation",
                     "ssm:UpdateAssociation", "ssm:StartAssociationsOnce", "ssm:StartChangeRequestExecution",
                     "ssm:CreateDocument", "ssm:UpdateDocument", "ecs:ExecuteCommand", "codebuild:StartBuild",
                     "codebuild:StartBuildBatch", "codebuild:StartCommandExecution", "codebuild:StartSandbox",
                     "codebuild:UpdateProject", "codebuild:RetryBuild", "codebuild:RetryBuildBatch",
                     "ssm:ResumeSession", "glue:CreateSession", "glue:RunStatement", "emr-containers:StartJobRun",
                     "servicecatalog:ExecuteProvisionedProductServiceAction", "sagemaker:CreatePresignedDomainUrl",
                     "ec2:RunScheduledInstances", "ec2:CreateFleet", "ec2:RequestSpotFleet",
                     "ec2:CreateReplaceRootVolumeTask", "ssm:RegisterTaskWithMaintenanceWindow",
                     "ssm:UpdateMaintenanceWindowTask", "ssm:CreateAssociationBatch", "ssm:UpdateDocumentDefaultVersion",
                     "eks:MutateViaKubernetesApi", "ecs:CreateExpressGatewayService", "ecs:UpdateExpressGatewayService",
                     "codebuild:CreateWebhook", "codebuild:UpdateWebhook", "codebuild:StartSandboxConnection",
                     "cloudformation:RegisterType", "cloudformation:ActivateType",
                     "sagemaker:UpdateNotebookInstanceLifecycleConfig", "glue:UpdateTrigger")),
    RiskRow(Risk.CODE_EXECUTION, "pushes the container image a service, task or function pulls and runs with its role",
            actions=("ecr:PutImage", "ecr:CompleteLayerUpload")),
    RiskRow(Risk.CODE_EXECUTION, "replaces the code or configuration a function, task, job or stack runs with its "
            "own role, or starts new compute from the account's network (the guardrails' CODE_RUNNERS; an "
            "existing stack's update runs as the stack's service role)",
            actions=("lambda:UpdateFunctionCode", "lambda:UpdateFunctionConfiguration", "lambda:CreateFunction",
                     "lambda:PublishLayerVersion", "ec2:RunInstances", "ec2:RequestSpotInstances",
                     "ec2:ModifyInstanceAttribute", "ec2:CreateLaunchTemplate", "ec2:CreateLaunchTemplateVersion",
                     "ec2:ReplaceIamInstanceProfileAssociation", "ec2:AssociateIamInstanceProfile", "ecs:RunTask",
                     "ecs:StartTask", "ecs:RegisterTaskDefinition", "ecs:CreateService", "batch:SubmitJob",
                     "batch:RegisterJobDefinition", "glue:CreateDevEndpoint", "glue:UpdateDevEndpoint",
                     "glue:CreateJob", "glue:UpdateJob", "glue:StartJobRun", "cloudformation:UpdateStack", "cloudformation:CreateChangeSet", "cloudformation:ExecuteChangeSet",
                     "cloudformation:CreateStackSet", "cloudformation:UpdateStackSet",
                     "cloudformation:CreateStackInstances", "cloudformation:UpdateStackInstances",
                     "datapipeline:CreatePipeline", "datapipeline:PutPipelineDefinition",
                     "sagemaker:CreateNotebookInstance", "sagemaker:CreateTrainingJob",
                     "sagemaker:CreateProcessingJob", "codebuild:CreateProject", "states:CreateStateMachine",
                     "states:UpdateStateMachine", "autoscaling:CreateLaunchConfiguration",
                     "autoscaling:UpdateAutoScalingGroup", "apprunner:CreateService", "apprunner:UpdateService",
                     "codepipeline:StartPipelineExecution", "codepipeline:UpdatePipeline",
                     "codedeploy:CreateDeployment", "elasticbeanstalk:UpdateEnvironment",
                     "emr-serverless:StartJobRun", "elasticmapreduce:RunJobFlow", "elasticmapreduce:AddJobFlowSteps")),
    # --- credential and secret exposure
    RiskRow(Risk.CREDENTIAL_EXPOSURE, "its response holds a credential",
            actions=cloudsplaining.ACTIONS_THAT_RETURN_CREDENTIALS,
            source=f"{_SOURCE} ACTIONS_THAT_RETURN_CREDENTIALS"),
    RiskRow(Risk.CREDENTIAL_EXPOSURE, "reads a secret or a secure parameter",
            actions=tuple(a for a in cloudsplaining.READ_ONLY_DATA_EXFILTRATION_ACTIONS if a not in NOT_SECRET),
            source=f"{_SOURCE} READ_ONLY_DATA_EXFILTRATION_ACTIONS"),
    RiskRow(Risk.CREDENTIAL_EXPOSURE, "returns secret values, passwords or sign-in tokens",
            actions=("secretsmanager:BatchGetSecretValue", "ssm:GetParameterHistory", "glue:GetConnection",
                     "glue:GetConnections", "cognito-idp:AdminInitiateAuth", "cognito-idp:InitiateAuth",
                     "iam:ResetServiceSpecificCredential", "payment-cryptography:ExportKey",
                     "sts:GetWebIdentityToken", "sts:GetDelegatedAccessToken", "iam:SendDelegationToken",
                     "events:RetrieveConnectionCredentials", "ssm:CreateActivation")),
    # --- resource exposure
    RiskRow(Risk.RESOURCE_EXPOSURE, "a permissions-management action outside the identity services changes a "
            "resource-based policy, ACL, grant or share (cloudsplaining's resource exposure)",
            levels=(AccessLevel.PERMISSIONS_MANAGEMENT,), every_action_at_levels=True,
            except_services=IDENTITY_SERVICES, source=f"{_SOURCE} resource exposure (permissions management)"),
    RiskRow(Risk.RESOURCE_EXPOSURE, "opens network paths, public URLs or image sharing",
            actions=("ec2:AuthorizeSecurityGroupIngress", "ec2:AuthorizeClientVpnIngress",
                     "ec2:ModifyImageAttribute", "ec2:ModifyFpgaImageAttribute", "ec2:CreateVpcPeeringConnection",
                     "ec2:AcceptVpcPeeringConnection", "ec2:AttachInternetGateway", "ec2:CreateRoute",
                     "ec2:ReplaceRoute", "lambda:CreateFunctionUrlConfig", "lambda:UpdateFunctionUrlConfig",
                     "s3:PutBucketWebsite", "rds:ModifyDBInstance", "ram:CreateResourceShare",
                     "ram:AssociateResourceShare", "ram:EnableSharingWithAwsOrganization",
                     "apigateway:UpdateRestApiPolicy", "transfer:CreateServer")),
    RiskRow(Risk.RESOURCE_EXPOSURE, "changes the rules that keep traffic out (security group rules in place, "
            "network ACLs, interfaces' groups, firewall and WAF rules, public addresses, instance metadata "
            "access): the same openings as the Authorize* actions by another name",
            actions=("ec2:ModifySecurityGroupRules", "ec2:CreateNetworkAclEntry", "ec2:ReplaceNetworkAclEntry",
                     "ec2:ReplaceNetworkAclAssociation", "ec2:ModifyNetworkInterfaceAttribute", "ec2:AssociateAddress",
                     "ec2:ModifyInstanceMetadataOptions", "ec2:ModifyInstanceMetadataDefaults",
                     "ec2:EnableSerialConsoleAccess", "elasticache:AuthorizeCacheSecurityGroupIngress",
                     "redshift:AuthorizeClusterSecurityGroupIngress", "redshift:ModifyCluster",
                     "workspaces:AuthorizeIpRules", "es:AuthorizeVpcEndpointAccess",
                     "network-firewall:UpdateFirewallPolicy", "network-firewall:UpdateRuleGroup",
                     "network-firewall:AssociateFirewallPolicy", "network-firewall:DisassociateSubnets",
                     "wafv2:UpdateWebACL", "wafv2:UpdateRuleGroup", "wafv2:UpdateIPSet", "wafv2:DisassociateWebACL",
                     "ec2:CreateInstanceConnectEndpoint", "ec2:ModifyVpcPeeringConnectionOptions",
                     "ec2:ModifyVpcEndpointServiceConfiguration", "ec2:AcceptVpcEndpointConnections",
                     "ec2:AcceptTransitGatewayPeeringAttachment", "ec2:AcceptTransitGatewayVpcAttachment",
                     "rds:EnableHttpEndpoint", "route53:CreateVPCAssociationAuthorization")),
    RiskRow(Risk.RESOURCE_EXPOSURE, "lets another account read or subscribe (log destinations, cross-account "
            "observability links, public build projects)",
            actions=("logs:PutDestinationPolicy", "logs:PutDeliveryDestinationPolicy", "logs:Link", "cloudwatch:Link",
                     "codebuild:UpdateProjectVisibility")),
    # --- data exfiltration paths
    RiskRow(Risk.DATA_EXFILTRATION, "copies data elsewhere as it arrives or in bulk (subscriptions, replication, "
            "exports, snapshot copies, traffic mirrors)",
            actions=("logs:PutSubscriptionFilter", "logs:PutDestination", "logs:CreateExportTask",
                     "logs:CreateDelivery", "logs:PutDeliveryDestination", "s3:PutReplicationConfiguration",
                     "s3:PutInventoryConfiguration", "s3:PutAnalyticsConfiguration", "s3:ReplicateObject",
                     "rds:CopyDBSnapshot", "rds:CreateDBSnapshot", "rds:CopyDBClusterSnapshot",
                     "rds:CreateDBClusterSnapshot", "rds:StartExportTask", "ec2:CreateSnapshot",
                     "ec2:CreateSnapshots", "ec2:CopySnapshot", "ec2:CopyImage", "ec2:CreateImage",
                     "ec2:ExportImage", "ec2:CreateInstanceExportTask", "ec2:CreateTrafficMirrorSession",
                     "ec2:CreateTrafficMirrorTarget", "ec2:AuthorizeSecurityGroupEgress",
                     "dynamodb:ExportTableToPointInTime", "backup:StartCopyJob", "sns:Subscribe",
                     "firehose:CreateDeliveryStream", "firehose:UpdateDestination", "datasync:CreateTask",
                     "datasync:StartTaskExecution", "dms:CreateReplicationTask", "dms:StartReplicationTask",
                     "elasticache:CopySnapshot", "redshift:CopyClusterSnapshot", "lightsail:ExportSnapshot",
                     "events:PutTargets", "dynamodb:EnableKinesisStreamingDestination",
                     "rds:CreateDBInstanceReadReplica", "qldb:ExportJournalToS3", "qldb:StreamJournalToKinesis",
                     "elasticache:ExportServerlessCacheSnapshot", "memorydb:CopySnapshot",
                     "docdb-elastic:CopyClusterSnapshot", "lightsail:CopySnapshot", "fsx:CopyBackup",
                     "ec2:CopyVolumes", "ec2:CreateStoreImageTask", "ecr:PutReplicationConfiguration",
                     "secretsmanager:ReplicateSecretToRegions", "logs:PutAccountPolicy", "s3:InitiateReplication",
                     "lambda:PutFunctionEventInvokeConfig", "lambda:UpdateFunctionEventInvokeConfig",
                     "events:CreateApiDestination", "events:UpdateApiDestination", "ec2:AttachVolume",
                     "ec2:BundleInstance", "dynamodb:CreateTableReplica", "dynamodb:CreateGlobalTable",
                     "dynamodb:UpdateGlobalTable")),
    RiskRow(Risk.DATA_EXFILTRATION, "restores a copy of the data under a new name the caller picks (then reads it, "
            "or resets its password)",
            actions=("rds:RestoreDBInstanceFromDBSnapshot", "rds:RestoreDBClusterFromSnapshot",
                     "rds:RestoreDBInstanceToPointInTime", "rds:RestoreDBClusterToPointInTime",
                     "dynamodb:RestoreTableFromBackup", "dynamodb:RestoreTableToPointInTime",
                     "dynamodb:RestoreTableFromAwsBackup", "backup:StartRestoreJob")),
    # --- destruction
    RiskRow(Risk.DESTRUCTIVE, "removes data or infrastructure that may not come back",
            verbs=("Delete", "Terminate", "Destroy", "Purge", "Remove", "Deregister", "Drop", "Truncate",
                   "Wipe", "Erase", "BatchDelete", "ForceDelete", "ScheduleKeyDeletion"), levels=CHANGES),
    RiskRow(Risk.DESTRUCTIVE, "makes data unreadable or stops a running workload",
            actions=("kms:DisableKey", "kms:ScheduleKeyDeletion", "kms:DisableKeyRotation",
                     "ec2:StopInstances", "rds:StopDBInstance", "rds:StopDBCluster",
                     "s3:PutLifecycleConfiguration", "s3:PutBucketVersioning",
                     "dynamodb:UpdateTimeToLive", "ecs:DeleteCluster", "lambda:PutFunctionConcurrency",
                     "cloudformation:UpdateStack", "cloudformation:ExecuteChangeSet",
                     "autoscaling:SetDesiredCapacity", "logs:PutRetentionPolicy", "ecs:StopTask",
                     "rds:BacktrackDBCluster", "dynamodb:UpdateContinuousBackups", "kms:ImportKeyMaterial",
                     "kms:DisconnectCustomKeyStore")),
    # --- production traffic and availability
    RiskRow(Risk.PRODUCTION_TRAFFIC, "changes DNS, routing of requests, or domain registrations",
            actions=("route53:ChangeResourceRecordSets", "route53:ChangeCidrCollection", "route53:UpdateHealthCheck",
                     "route53:CreateTrafficPolicyInstance", "route53:UpdateTrafficPolicyInstance",
                     "route53:AssociateVPCWithHostedZone", "route53domains:*", "cloudfront:UpdateDistribution",
                     "cloudfront:AssociateAlias", "cloudfront:CreateInvalidation", "globalaccelerator:Update*",
                     "apigateway:PATCH", "apigateway:PUT", "apigateway:POST", "wafv2:UpdateWebACL",
                     "wafv2:DisassociateWebACL", "route53:DisableHostedZoneDNSSEC", "ec2:ReplaceRouteTableAssociation",
                     "ec2:DisassociateAddress", "networkmanager:ExecuteCoreNetworkChangeSet",
                     "codepipeline:DisableStageTransition", "route53:DisassociateVPCFromHostedZone",
                     "route53:DeactivateKeySigningKey", "ec2:AssociateRouteTable", "ec2:ReplaceTransitGatewayRoute"),
            levels=CHANGES),
    RiskRow(Risk.PRODUCTION_TRAFFIC, "changes load balancers: listeners, rules, targets, attributes",
            actions=("elasticloadbalancing:*",), levels=CHANGES),
    RiskRow(Risk.PRODUCTION_TRAFFIC, "deploys, scales, restarts or reconfigures what serves requests",
            actions=("ecs:UpdateService", "ecs:UpdateServicePrimaryTaskSet", "ecs:CreateTaskSet",
                     "ecs:UpdateTaskSet", "ecs:PutClusterCapacityProviders", "ecs:UpdateCapacityProvider",
                     "autoscaling:SetDesiredCapacity", "autoscaling:UpdateAutoScalingGroup",
                     "autoscaling:PutScalingPolicy", "autoscaling:PutScheduledUpdateGroupAction",
                     "autoscaling:SuspendProcesses", "autoscaling:ResumeProcesses", "autoscaling:ExecutePolicy",
                     "autoscaling:SetInstanceHealth", "autoscaling:EnterStandby", "autoscaling:DetachInstances",
                     "application-autoscaling:RegisterScalableTarget", "application-autoscaling:PutScalingPolicy",
                     "application-autoscaling:PutScheduledAction", "lambda:PutFunctionConcurrency",
                     "lambda:UpdateAlias", "lambda:PutProvisionedConcurrencyConfig", "lambda:UpdateEventSourceMapping",
                     "ec2:StopInstances", "ec2:StartInstances", "ec2:RebootInstances", "ec2:ModifyInstanceAttribute",
                     "ec2:ReplaceRoute", "eks:UpdateClusterConfig", "eks:UpdateClusterVersion",
                     "eks:UpdateNodegroupConfig", "eks:UpdateNodegroupVersion", "codedeploy:CreateDeployment",
                     "codedeploy:ContinueDeployment", "codedeploy:StopDeployment", "cloudformation:UpdateStack",
                     "cloudformation:ExecuteChangeSet", "elasticbeanstalk:UpdateEnvironment",
                     "elasticbeanstalk:SwapEnvironmentCNAMEs", "elasticbeanstalk:RestartAppServer",
                     "apprunner:UpdateService", "apprunner:PauseService", "appconfig:StartDeployment",
                     "kinesis:UpdateShardCount", "dynamodb:UpdateTable", "es:UpdateDomainConfig", "ecs:StopTask",
                     "ecs:UpdateContainerInstancesState", "cloudformation:ContinueUpdateRollback",
                     "cloudformation:RollbackStack", "cloudformation:CancelUpdateStack",
                     "es:UpgradeDomain", "amplify:StartDeployment")),
    RiskRow(Risk.PRODUCTION_TRAFFIC, "modifies, restarts or fails over databases and caches",
            actions=("rds:Modify*", "rds:Reboot*", "rds:Failover*", "rds:Start*", "rds:Stop*",
                     "rds:PromoteReadReplica*", "rds:Switchover*", "rds:ApplyPendingMaintenanceAction", "rds:Reset*",
                     "elasticache:Modify*",
                     "elasticache:Reboot*", "elasticache:TestFailover", "elasticache:FailoverGlobalReplicationGroup",
                     "elasticache:IncreaseReplicaCount", "elasticache:DecreaseReplicaCount",
                     "redshift:ModifyCluster", "redshift:RebootCluster", "redshift:ResizeCluster",
                     "docdb-elastic:UpdateCluster"),
            levels=(AccessLevel.WRITE,)),
)


@functools.cache
def _rows_for(service: str) -> tuple[RiskRow, ...]:
    """The rows that can match an action of ``service`` (the others name only other services), in order."""
    return tuple(row for row in RISK_ROWS if row.every_action_at_levels or row.verbs or service in _row_names(row))


@functools.lru_cache(maxsize=65536)
def _classify(service: str, name: str, level: AccessLevel) -> tuple[tuple[Risk, str], ...]:
    info = ActionInfo(service=service, name=name, access_level=level)
    return tuple((row.risk, row.reason) for row in _rows_for(service) if row.matches(info))


def classify(info: ActionInfo) -> frozenset[Risk]:
    """The classes of one action."""
    return frozenset(risk for risk, _ in _classify(info.service, info.name, info.access_level))


def risk_reasons(info: ActionInfo) -> tuple[str, ...]:
    """Why the action is in each of its classes (one reason per matching row)."""
    return tuple(dict.fromkeys(reason for _, reason in _classify(info.service, info.name, info.access_level)))


@dataclass(frozen=True)
class RiskFinding:
    """One class present in a grant, with the actions that bring it (AWS's spelling, sorted)."""

    risk_class: RiskClass
    actions: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"class": self.risk_class.risk.value, "title": self.risk_class.title,
                "sentence": self.risk_class.sentence, "actions": list(self.actions),
                "capability": self.risk_class.capability, "approvals": self.risk_class.approvals}

    @property
    def line(self) -> str:
        """One line for people: ``CODE EXECUTION AS ANOTHER IDENTITY: can run code ... (lambda:UpdateFunctionCode)``."""
        shown = ", ".join(self.actions[:6]) + (f" and {len(self.actions) - 6} more" if len(self.actions) > 6 else "")
        return f"{self.risk_class.title.upper()}: {self.risk_class.sentence} ({shown})"


EVERY_ACTION = "every action not named (NotAction)"


def risk_of(granted: Iterable[ActionInfo], *, everything: bool = False) -> list[RiskFinding]:
    """The classes these actions carry, most dangerous first.  ``everything``: a grant of every action
    (a NotAction statement, a wildcard service) carries every class."""
    by_risk: dict[Risk, set[str]] = {}
    for info in granted:
        for risk in classify(info):
            by_risk.setdefault(risk, set()).add(info.key)
    if everything:
        for risk in BY_RISK:
            by_risk.setdefault(risk, set()).add(EVERY_ACTION)
    return [RiskFinding(BY_RISK[risk], tuple(sorted(by_risk[risk]))) for risk in ordered(by_risk)]


def risk_list(granted: Iterable[ActionInfo], *, everything: bool = False) -> list[dict[str, object]]:
    """:func:`risk_of` as JSON-ready dicts: the ``risk`` field of explain, the template view, the pending
    request and the webhook (``[{class, title, sentence, actions, capability, approvals}]``)."""
    return [finding.to_dict() for finding in risk_of(granted, everything=everything)]
