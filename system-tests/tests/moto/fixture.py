"""AWS fixtures in a moto server for the control-plane integration test.

    fixture.py ENDPOINT setup CLUSTER SERVICE SECRET CA_CERT_FILE CA_KEY_FILE
        VPC with DNS hostnames, public subnet, security group, ECS cluster, a Fargate task
        definition and service (desired 0), and the CA secret {"ca_cert", "ca_key"}.
    fixture.py ENDPOINT start-task CLUSTER SERVICE PUBLIC_IP
        What ECS does after a scale-up (moto's UpdateService starts nothing): RunTask with
        startedBy "ecs-svc/SERVICE", then an Elastic IP PUBLIC_IP on the task's interface.
        Prints the task ARN.
    fixture.py ENDPOINT desired CLUSTER SERVICE
        Prints the service's desired count.

Prints JSON on stdout; errors go to stderr with a non-zero exit.
"""

import json
import sys
import urllib.request

import boto3

REGION = "us-east-1"


def client(endpoint, name):
    return boto3.client(
        name,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def setup(endpoint, cluster, service, secret, cert_file, key_file):
    # moto moves a task one status on at every DescribeTasks (RUNNING, DEACTIVATING, ...);
    # a real task stays RUNNING until stopped.
    urllib.request.urlopen(
        urllib.request.Request(
            endpoint + "/moto-api/state-manager/set-transition",
            data=json.dumps(
                {
                    "model_name": "ecs::task",
                    "transition": {"progression": "manual", "times": 1000000},
                }
            ).encode(),
            method="POST",
        )
    ).read()
    ec2 = client(endpoint, "ec2")
    ecs = client(endpoint, "ecs")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(
        GroupName="fluidity-server", Description="fluidity", VpcId=vpc
    )["GroupId"]
    ecs.create_cluster(clusterName=cluster)
    ecs.register_task_definition(
        family="fluidity-server",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {
                "name": "server",
                "image": "fluidity-server:test",
                "memory": 512,
                "essential": True,
                "portMappings": [{"containerPort": 8443, "protocol": "tcp"}],
            }
        ],
    )
    network = {
        "awsvpcConfiguration": {
            "subnets": [subnet],
            "securityGroups": [group],
            "assignPublicIp": "ENABLED",
        }
    }
    ecs.create_service(
        cluster=cluster,
        serviceName=service,
        taskDefinition="fluidity-server",
        desiredCount=0,
        launchType="FARGATE",
        networkConfiguration=network,
    )
    with open(cert_file) as f:
        cert = f.read()
    with open(key_file) as f:
        key = f.read()
    client(endpoint, "secretsmanager").create_secret(
        Name=secret, SecretString=json.dumps({"ca_cert": cert, "ca_key": key})
    )
    print(json.dumps({"vpc": vpc, "subnet": subnet, "security_group": group}))


def start_task(endpoint, cluster, service, public_ip):
    ec2 = client(endpoint, "ec2")
    ecs = client(endpoint, "ecs")
    described = ecs.describe_services(cluster=cluster, services=[service])["services"][0]
    network = described["networkConfiguration"]
    task = ecs.run_task(
        cluster=cluster,
        taskDefinition="fluidity-server",
        launchType="FARGATE",
        startedBy="ecs-svc/" + service,
        networkConfiguration=network,
        count=1,
    )["tasks"][0]
    eni = next(
        detail["value"]
        for attachment in task["attachments"]
        if attachment["type"] == "ElasticNetworkInterface"
        for detail in attachment["details"]
        if detail["name"] == "networkInterfaceId"
    )
    allocation = ec2.allocate_address(Domain="vpc", Address=public_ip)["AllocationId"]
    ec2.associate_address(AllocationId=allocation, NetworkInterfaceId=eni)
    print(json.dumps({"task_arn": task["taskArn"], "eni": eni}))


def desired(endpoint, cluster, service):
    described = client(endpoint, "ecs").describe_services(cluster=cluster, services=[service])
    print(json.dumps({"desired": described["services"][0]["desiredCount"]}))


def main(argv):
    endpoint, command, args = argv[1], argv[2], argv[3:]
    {"setup": setup, "start-task": start_task, "desired": desired}[command](endpoint, *args)


if __name__ == "__main__":
    main(sys.argv)
