"""The PyTorch CIFAR-10 tutorial's training loop, as the tutorial writes it: ImageFolder +
DataLoader (batch 4, shuffle), ToTensor + Normalize(0.5, 0.5), LeNet, SGD(lr 0.001, momentum 0.9),
2 epochs. It is the reference deepstep's tutorial recipe is timed against.

    python -m bench.tutorial_loop --data ~/.cache/deepstep/unpacked/cifar10-jpeg-XXXX
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn
import torchvision
import torchvision.transforms as transforms

from deepstep.models.cifar import LeNet


def run(folder: str, epochs: int = 2, batch_size: int = 4, seed: int = 0, workers: int = 2) -> dict:
    torch.manual_seed(seed)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    trainset = torchvision.datasets.ImageFolder(f"{folder}/train", transform=transform)
    testset = torchvision.datasets.ImageFolder(f"{folder}/test", transform=transform)
    trainloader = torch.utils.data.DataLoader(trainset, batch_size=batch_size, shuffle=True, num_workers=workers)
    testloader = torch.utils.data.DataLoader(testset, batch_size=batch_size, shuffle=False, num_workers=workers)
    net = LeNet(10)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)

    start = time.perf_counter()
    for _epoch in range(epochs):
        for inputs, labels in trainloader:
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
    train_seconds = time.perf_counter() - start

    correct = total = 0
    with torch.no_grad():
        for images, labels in testloader:
            predicted = net(images).argmax(1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    return {
        "train_seconds": train_seconds,
        "test_accuracy": correct / total,
        "epochs": epochs,
        "batch_size": batch_size,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="an unpacked ImageFolder with train/ and test/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.data, seed=args.seed)))
