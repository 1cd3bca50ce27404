// compose-check validates Compose files with compose-go, the loader Docker Compose itself uses:
// the Compose specification's JSON schema plus its semantic checks (service references in
// depends_on and network_mode, volume and network references, interpolation), without a Docker
// engine. Built by `scripts/bootstrap.sh compose-check`; run by scripts/deploy-check.sh.
//
//	compose-check FILE...
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check FILE...")
		os.Exit(2)
	}
	failed := false
	for _, file := range os.Args[1:] {
		// No OS environment or .env file: the result must not depend on the caller's shell.
		opts, err := cli.NewProjectOptions([]string{file}, cli.WithName("compose-check"))
		if err == nil {
			var project interface{ ServiceNames() []string }
			project, err = opts.LoadProject(context.Background())
			if err == nil {
				fmt.Printf("%s: valid (%d services)\n", file, len(project.ServiceNames()))
				continue
			}
		}
		fmt.Fprintf(os.Stderr, "%s: %v\n", file, err)
		failed = true
	}
	if failed {
		os.Exit(1)
	}
}
