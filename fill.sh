cd /tmp/btF; source env.sh
./run.sh $CLIENT_CG btF-node sh -c 'for i in $(seq 1 25); do curl -s -o /dev/null -w "%{local_port} " http://10.0.0.10:8080/; done'; echo
