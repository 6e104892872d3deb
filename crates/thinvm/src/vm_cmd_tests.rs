use super::*;
use api::daemon::State;

#[test]
fn table_has_one_row_per_vm() {
    let spec: VmSpec =
        serde_json::from_str(r#"{"name":"web","kernel":"/k","memory":67108864}"#).unwrap();
    let vm = VmStatus {
        spec,
        state: State::Running,
        pid: Some(42),
        restarts: 3,
        last_exit: None,
        vsock_socket: None,
    };
    let t = table(&[vm]);
    let lines: Vec<_> = t.lines().collect();
    assert_eq!(lines.len(), 2);
    let cols: Vec<_> = lines[1].split_whitespace().collect();
    assert_eq!(cols, ["web", "running", "1", "64M", "42", "3"]);
}

#[test]
fn show_lists_disks_and_cards() {
    let vm: VmStatus = serde_json::from_str(
        r#"{"name":"web","kernel":"/k","disks":[{"path":"/d.qcow2","format":"qcow2"}],
            "nets":[{"tap":"tap0","mac":"02:00:00:00:00:01"},{"tap":"tap1"}],
            "vsock":{"cid":7},"balloon":{"size":1048576,"free_page_reporting":true},
            "state":"defined","pid":null,"restarts":0,"last_exit":null,
            "vsock_socket":"/s/vms/web/vsock.sock"}"#,
    )
    .unwrap();
    assert_eq!(
        devices(&vm),
        "disk0  path=/d.qcow2,format=qcow2\nnet0   tap=tap0,mac=02:00:00:00:00:01\n\
         net1   tap=tap1,mac=-\nvsock   cid=7,socket=/s/vms/web/vsock.sock\n\
         balloon size=1048576,deflate_on_oom=off,free_page_reporting=on\n"
    );
}
