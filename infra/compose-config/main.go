// Command compose-config loads a compose file exactly as `docker compose config` does, through
// compose-go (the loader of Docker Compose): interpolation with ${VAR:?} checks, the Compose
// Specification JSON schema, normalization and the consistency checks (unknown depends_on targets,
// networks, volumes). It needs no Docker engine. infra/validate-deploy.sh runs it on docker-compose.yml.
//
//	compose-config [-env-file FILE] [-profile NAME]... COMPOSE_FILE...
//
// Exit status 0 and one line per service when the file is valid; 1 and the loader's errors otherwise.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var envFiles, profiles listFlag
	flag.Var(&envFiles, "env-file", "env file for interpolation (repeatable; default: .env if present)")
	flag.Var(&profiles, "profile", "profile to enable (repeatable)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: compose-config [-env-file FILE] [-profile NAME]... COMPOSE_FILE...")
		os.Exit(2)
	}
	options, err := cli.NewProjectOptions(flag.Args(),
		cli.WithOsEnv,
		cli.WithEnvFiles(envFiles...),
		cli.WithDotEnv,
		cli.WithProfiles(profiles),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		fail(err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	names := project.ServiceNames()
	sort.Strings(names)
	fmt.Printf("%s: valid, profiles [%s], %d services: %s\n",
		strings.Join(project.ComposeFiles, ","), strings.Join(profiles, ","), len(names), strings.Join(names, " "))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
