package testenv

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// Instruction is one Dockerfile instruction: its keyword (upper case) and the
// rest of its (joined) lines.
type Instruction struct {
	Cmd  string // FROM, RUN, COPY, USER, …
	Args string // the rest, continuation lines joined with a space
	Line int    // where it starts, from 1
}

// Stage is one build stage: its FROM and the instructions that follow it.
type Stage struct {
	From  string // the base image
	Name  string // the AS name, "" if none
	Instr []Instruction
}

// Dockerfile is a parsed Dockerfile: enough to read what an image runs (its
// final stage's USER, WORKDIR, ENTRYPOINT, CMD, EXPOSE) without a container engine.
type Dockerfile struct {
	Stages []Stage
}

// ParseDockerfile reads the Dockerfile at path: comments and blank lines are
// dropped, lines ending in a backslash are joined, and each instruction is
// filed under the stage its FROM started.
func ParseDockerfile(path string) (*Dockerfile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d := &Dockerfile{}
	sc := bufio.NewScanner(f)
	var cur strings.Builder
	start, n := 0, 0
	flush := func() error {
		s := strings.TrimSpace(cur.String())
		cur.Reset()
		if s == "" {
			return nil
		}
		cmd, args, _ := strings.Cut(s, " ")
		in := Instruction{Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args), Line: start}
		if in.Cmd == "FROM" {
			st := Stage{From: in.Args}
			if img, name, ok := strings.Cut(in.Args, " AS "); ok {
				st.From, st.Name = strings.TrimSpace(img), strings.TrimSpace(name)
			} else if img, name, ok := strings.Cut(in.Args, " as "); ok {
				st.From, st.Name = strings.TrimSpace(img), strings.TrimSpace(name)
			}
			d.Stages = append(d.Stages, st)
			return nil
		}
		if len(d.Stages) == 0 {
			return fmt.Errorf("%s:%d: %s before the first FROM", path, start, in.Cmd)
		}
		st := &d.Stages[len(d.Stages)-1]
		st.Instr = append(st.Instr, in)
		return nil
	}
	for sc.Scan() {
		n++
		line := sc.Text()
		t := strings.TrimSpace(line)
		if cur.Len() == 0 && (t == "" || strings.HasPrefix(t, "#")) {
			continue
		}
		if cur.Len() > 0 && strings.HasPrefix(t, "#") {
			continue // a comment inside a continued instruction
		}
		if cur.Len() == 0 {
			start = n
		}
		if c, ok := strings.CutSuffix(t, "\\"); ok {
			cur.WriteString(c + " ")
			continue
		}
		cur.WriteString(t)
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if len(d.Stages) == 0 {
		return nil, fmt.Errorf("%s: no FROM", path)
	}
	return d, nil
}

// Final returns the last stage: the image that is shipped.
func (d *Dockerfile) Final() *Stage { return &d.Stages[len(d.Stages)-1] }

// Stage returns the stage named name (FROM … AS name), or nil.
func (d *Dockerfile) Stage(name string) *Stage {
	for i := range d.Stages {
		if d.Stages[i].Name == name {
			return &d.Stages[i]
		}
	}
	return nil
}

// All returns the arguments of every instruction cmd of the stage, in order.
func (s *Stage) All(cmd string) []Instruction {
	var out []Instruction
	for _, in := range s.Instr {
		if in.Cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// Last returns the arguments of the stage's last instruction cmd ("" if none):
// the one in force for USER, WORKDIR, ENTRYPOINT and CMD.
func (s *Stage) Last(cmd string) string {
	all := s.All(cmd)
	if len(all) == 0 {
		return ""
	}
	return all[len(all)-1].Args
}

// Exec returns the JSON (exec) form of the stage's last instruction cmd
// (ENTRYPOINT or CMD); the shell form is an error: it would need /bin/sh,
// which a distroless image does not have.
func (s *Stage) Exec(cmd string) ([]string, error) {
	a := s.Last(cmd)
	if a == "" {
		return nil, nil
	}
	var out []string
	if err := json.Unmarshal([]byte(a), &out); err != nil {
		return nil, fmt.Errorf("%s %s: not the exec (JSON array) form: %v", cmd, a, err)
	}
	return out, nil
}
