package schema

import "strings"

// Names a REPL already has: a root tool of that name would hide them (a
// Bash builtin or keyword, a Python builtin or keyword, the Python REPL's
// own variables).
var (
	bashNames = strings.Fields(`alias bg bind break builtin caller cd command compgen complete compopt
		continue declare dirs disown echo enable eval exec exit export false fc fg getopts hash help
		history jobs kill let local logout mapfile popd printf pushd pwd read readarray readonly return
		set shift shopt source suspend test times trap true type typeset ulimit umask unalias unset wait
		if then else elif fi case esac for select while until do done in function time coproc`)
	pythonNames = strings.Fields(`False None True and as assert async await break class continue def
		del elif else except finally for from global if import in is lambda nonlocal not or pass raise
		return try while with yield case match
		abs aiter all anext any ascii bin bool breakpoint bytearray bytes callable chr classmethod compile
		complex copyright credits delattr dict dir divmod enumerate eval exec exit filter float format
		frozenset getattr globals hasattr hash help hex id input int isinstance issubclass iter len
		license list locals map max memoryview min next object oct open ord pow print property quit
		range repr reversed round set setattr slice sorted staticmethod str sum super tuple type vars zip
		answer extra_data fs_metadata`)
)

// HiddenByTool says what a root tool called name would hide in a REPL of
// language ("" when nothing).
func HiddenByTool(language, name string) string {
	switch language {
	case "python":
		for _, n := range pythonNames {
			if n == name {
				return "Python's " + name
			}
		}
	default:
		for _, n := range bashNames {
			if n == name {
				return "Bash's builtin " + name
			}
		}
	}
	return ""
}
