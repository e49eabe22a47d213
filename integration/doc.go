// Package integration holds the VM tests of ecs-image: real QEMU boots (KVM
// when it works, else TCG), real cloud-init reading our seed ISOs, real
// qemu-img. They run with `make integration` (build tag "integration").
package integration
