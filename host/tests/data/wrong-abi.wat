;; A component whose `abi-version` has the wrong type (a u32, not a string).
(component
  (core module $m (func (export "v") (result i32) i32.const 7))
  (core instance $i (instantiate $m))
  (func (export "abi-version") (result u32) (canon lift (core func $i "v"))))
