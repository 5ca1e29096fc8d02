;; A component built for the previous ABI, as far as the host can tell: its `abi-version`
;; answers "0.2.0", and it has none of 0.3.0's decisions (which take the settings first).
(component
  (core module $m
    (memory (export "memory") 1)
    ;; The string "0.2.0" at 16; its (pointer, length) pair at 8.
    (data (i32.const 8) "\10\00\00\00\05\00\00\00")
    (data (i32.const 16) "0.2.0")
    (func (export "abi-version") (result i32) i32.const 8))
  (core instance $i (instantiate $m))
  (func (export "abi-version") (result string)
    (canon lift (core func $i "abi-version") (memory (core memory $i "memory")))))
