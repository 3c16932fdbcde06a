package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

func init() { register(newGenDocsCmd) }

// newGenDocsCmd is the hidden `synguard gendocs` command that packaging
// (make man/completions, make deb) runs at build time, so that man pages and
// shell completions always match the commands and flags of the binary being
// shipped instead of being maintained by hand.
func newGenDocsCmd() *cobra.Command {
	var manDir, complDir string
	cmd := &cobra.Command{
		Use:    "gendocs",
		Short:  "Generate man pages and shell completions (used by packaging)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if manDir == "" && complDir == "" {
				return &exitError{code: 2, err: errors.New("gendocs: give --man DIR and/or --completions DIR")}
			}
			root := cmd.Root()
			if manDir != "" {
				if err := genMan(root, manDir); err != nil {
					return err
				}
			}
			if complDir != "" {
				if err := genCompletions(root, complDir); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&manDir, "man", "", "write section 1 man pages (synguard.1, synguard-<cmd>.1, ...) to this directory")
	cmd.Flags().StringVar(&complDir, "completions", "", "write completions to this directory: synguard.bash, _synguard (zsh), synguard.fish")
	return cmd
}

// genMan writes one man page per visible command. The date comes from
// SOURCE_DATE_EPOCH when set, so that package builds are reproducible.
func genMan(root *cobra.Command, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("gendocs --man %s: %w", dir, err)
	}
	date := time.Now()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("gendocs: SOURCE_DATE_EPOCH %q: want seconds since 1970: %w", s, err)
		}
		date = time.Unix(sec, 0).UTC()
	}
	root.DisableAutoGenTag = true // no build timestamp in the page body
	header := &doc.GenManHeader{
		Title:   "SYNGUARD",
		Section: "1",
		Date:    &date,
		Source:  "synguard " + root.Version,
		Manual:  "synguard manual",
	}
	if err := doc.GenManTree(root, header, dir); err != nil {
		return fmt.Errorf("gendocs --man %s: %w", dir, err)
	}
	return nil
}

// genCompletions writes bash, zsh and fish completions under the names each
// shell's autoloader expects once installed (bash: synguard, zsh: _synguard,
// fish: synguard.fish); bash's file is written as synguard.bash here and
// renamed at install time.
func genCompletions(root *cobra.Command, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("gendocs --completions %s: %w", dir, err)
	}
	gens := []struct {
		name string
		gen  func(f *os.File) error
	}{
		{"synguard.bash", func(f *os.File) error { return root.GenBashCompletionV2(f, true) }},
		{"_synguard", func(f *os.File) error { return root.GenZshCompletion(f) }},
		{"synguard.fish", func(f *os.File) error { return root.GenFishCompletion(f, true) }},
	}
	for _, g := range gens {
		path := filepath.Join(dir, g.name)
		f, err := os.Create(path)
		if err != nil {
			return fmt.Errorf("gendocs --completions: %w", err)
		}
		err = g.gen(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("gendocs --completions: write %s: %w", path, err)
		}
	}
	return nil
}
