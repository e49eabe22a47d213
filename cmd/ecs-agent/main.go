// Command ecs-agent is the in-VM agent that brings an ECS appliance up from its env.yml.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "ecs-agent: not implemented yet")
	os.Exit(1)
}
