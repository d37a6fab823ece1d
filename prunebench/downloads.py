"""Download-based dataset sources (cifar10, cifar100, tinyimagenet)."""
