package runner

import (
	"encoding/xml"
	"fmt"
	"io"
	"strings"
)

// JUnit XML, as CI systems read it: one test case per rollout; a rollout
// that errored is an <error>, one that missed an expectation a <failure>
// listing expected versus got.
type junitSuites struct {
	XMLName xml.Name     `xml:"testsuites"`
	Suites  []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name     string      `xml:"name,attr"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Errors   int         `xml:"errors,attr"`
	Skipped  int         `xml:"skipped,attr"`
	Time     string      `xml:"time,attr"`
	Cases    []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitMessage `xml:"failure,omitempty"`
	Error     *junitMessage `xml:"error,omitempty"`
	Skipped   *junitMessage `xml:"skipped,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Body    string `xml:",chardata"`
}

// WriteJUnit writes the run as JUnit XML.
func WriteJUnit(w io.Writer, suite string, rep *Report, seconds float64) error {
	s := junitSuite{Name: suite, Tests: len(rep.Results) + len(rep.NotStarted), Skipped: len(rep.NotStarted), Time: fmt.Sprintf("%.3f", seconds)}
	for _, r := range rep.Results {
		c := junitCase{Name: r.ID, Classname: suite, Time: fmt.Sprintf("%.3f", r.Volatile.Seconds)}
		var unmet []string
		for _, e := range r.Expect {
			if !e.Met {
				unmet = append(unmet, fmt.Sprintf("%s: expected %s, got %s", e.Field, e.Expected, e.Got))
			}
		}
		switch {
		case r.Status == StatusError && !expectsError(r):
			s.Errors++
			c.Error = &junitMessage{Message: r.Error, Type: "error", Body: r.Error}
		case len(unmet) > 0:
			s.Failures++
			c.Failure = &junitMessage{Message: strings.Join(unmet, "; "), Type: "expectation", Body: strings.Join(unmet, "\n")}
		}
		reward := "none"
		if r.Reward != nil {
			reward = fmt.Sprint(*r.Reward)
		}
		c.SystemOut = fmt.Sprintf("status: %s\nanswer: %s\nreward: %s\n", r.Status, r.Answer, reward)
		s.Cases = append(s.Cases, c)
	}
	for _, id := range rep.NotStarted {
		s.Cases = append(s.Cases, junitCase{Name: id, Classname: suite, Time: "0.000",
			Skipped: &junitMessage{Message: "not started: the run was interrupted", Type: "interrupted"}})
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(junitSuites{Suites: []junitSuite{s}}); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

func expectsError(r *Result) bool {
	for _, e := range r.Expect {
		if e.Field == "status" && e.Expected == StatusError {
			return true
		}
	}
	return false
}
